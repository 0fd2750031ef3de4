//! DfE reference data: census reason codes and attendance codes.
