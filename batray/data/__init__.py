"""Data: schemas, readers with validation, Eq. 1 direction handling, packing, SFT masking, demo world."""
