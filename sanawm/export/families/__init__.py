"""One export spec per model family: its engines' I/O, sample feeds, calibration, precision policy, manifest section."""
