"""cseg.calib: calibration data, activation statistics, quantization of the exported graphs, router fitting."""
