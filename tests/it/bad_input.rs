//! Integration tests: bad_input (filled in area by area).
