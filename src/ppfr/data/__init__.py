"""Face data: image I/O, datasets of aligned faces, and verification pairs."""
