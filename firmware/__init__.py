"""What goes on the board (this marker only lets the host find the files)."""
