"""Host-array steps any host backend runs (ONNX Runtime today): SAM 3's frame steps (`HostSam3`) and greedy decoding
with a host KV cache (`HostDecoder`). Their device twins are in cseg.runtime.tensorrt: `DeviceSam3`, `DeviceDecoder`."""
