//! Integration tests: messages (filled in area by area).
