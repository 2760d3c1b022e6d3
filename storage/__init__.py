"""What a training workdir holds on disk; shared by training and inference."""
