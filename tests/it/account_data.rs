//! Integration tests: account_data (filled in area by area).
