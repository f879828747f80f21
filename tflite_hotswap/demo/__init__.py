"""The demo: an inference loop hot-swapped under load (python -m tflite_hotswap.demo)."""
