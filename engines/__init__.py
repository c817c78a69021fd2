"""cseg.engines: what runs on a target: TensorRT plans built on the device, or ORT-optimised graphs for `cpu`."""
