//! Integration tests: accounts (filled in area by area).
