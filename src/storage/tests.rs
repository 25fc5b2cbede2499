//! Backend-agnostic storage conformance tests.
