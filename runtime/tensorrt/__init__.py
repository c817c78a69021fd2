"""The TensorRT backend (TensorRT + cuda-python, imported only when a bundle's engines are opened): engines and their
checks (engine.py), the decoder on the device (decoder.py: `DeviceDecoder`), SAM 3's frame path on the device (sam3.py:
`DeviceSam3`) and the engine I/O bindings (io.py)."""
