"""Published checkpoint formats of video models' authors: each one's key map onto our nets."""
