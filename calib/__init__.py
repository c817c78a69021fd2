"""cseg.calib: calibration data, quantization of the exported graphs with an accuracy gate (router fitting to come)."""
