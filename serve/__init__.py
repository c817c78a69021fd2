"""cseg served by NVIDIA Triton Inference Server through PyTriton (issue 31).

`cseg.serve.contract` fixes the tensor contract both sides use; `cseg.serve.server` binds the models (it needs the
`serve` extra, installed in its own environment: PyTriton pins numpy<2), `cseg.serve.induce` is cseg_induce's handler;
`cseg.serve.client.RemoteRuntime` is the `Runtime` API over gRPC. `cseg.serve.triton_repo` writes a model repository
for a stock tritonserver (`cseg export-triton`), whose Python-backend models run `cseg.serve.triton_python`.
"""
