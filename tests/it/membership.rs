//! Integration tests: membership (filled in area by area).
