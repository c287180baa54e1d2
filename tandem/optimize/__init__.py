"""Model optimization: quantization, evaluation, the quality–memory frontier."""
