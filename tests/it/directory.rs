//! Integration tests: directory (filled in area by area).
