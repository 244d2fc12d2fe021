"""GeMKR instruction tuning: clue sampling, instruction data, the training loop and ``gemkr train``."""
