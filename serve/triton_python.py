"""The Python-backend model of a repository written by `cseg export-triton` (its model.py imports this class), for a
stock tritonserver: each of cseg_segment / cseg_apply / cseg_induce opens the bundle's cseg Runtime in its own stub
process and answers with the request handlers `cseg serve` uses (cseg.serve.server.Handlers, cseg.serve.induce), so
the tensors are cseg.serve.contract's and RemoteRuntime is the client.

Under Triton the models are separate processes: cseg_induce saves each rule into the repository's rules folder and
cseg_apply reads that folder again when a rule file changes (FolderRules), which is how an induced rule reaches it.
Run on a stock tritonserver (the 2.51 binary PyTriton's wheel bundles, started by cseg.serve.stock:
tests/test_serve_stock.py); tests/test_serve_triton.py also drives this class with a stand-in for
triton_python_backend_utils. cseg and its runtime's dependencies (numpy<2 with the bundled Python backend, ONNX
Runtime) must be importable by the backend stub's Python: the environment whose `python` comes first on PATH.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cseg.serve import contract


class FolderRules(dict):
    """{rule id: (Rule, version)} of a rules folder, each rule (re)loaded when its files change: another process
    (cseg_induce's) writes them."""

    def __init__(self, folder, manifest: dict):
        super().__init__()
        self.folder, self.manifest, self._stamps = Path(folder), manifest, {}

    def _refresh(self, rule_id) -> None:
        from cseg.runtime.rules import Rule
        from cseg.serve.server import rule_version

        if not isinstance(rule_id, str) or "/" in rule_id or rule_id.startswith("."):
            return
        path = self.folder / f"{rule_id}.json"
        try:
            stamp = tuple((p.stat().st_mtime_ns, p.stat().st_size) for p in (path, path.with_suffix(".npz")))
        except OSError:
            return
        if self._stamps.get(rule_id) != stamp:
            rule = Rule.load(path)
            rule.check_bundle(self.manifest)
            super().__setitem__(rule_id, (rule, rule_version(path)))
            self._stamps[rule_id] = stamp

    def __contains__(self, rule_id) -> bool:
        self._refresh(rule_id)
        return super().__contains__(rule_id)

    def __getitem__(self, rule_id):
        self._refresh(rule_id)
        return super().__getitem__(rule_id)

    def get(self, rule_id, default=None):
        self._refresh(rule_id)
        return super().get(rule_id, default)

    def __iter__(self):  # the folder's rules, loaded here yet or not: what an unknown rule's error lists
        return iter(sorted(path.stem for path in self.folder.glob("*.json")))

    def __len__(self) -> int:
        return sum(1 for _ in self)


class TritonPythonModel:
    def initialize(self, args) -> None:
        from cseg.runtime import Runtime
        from cseg.serve.induce import Inducer
        from cseg.serve.server import Handlers
        from cseg.serve.shm import SharedFrames

        config = json.loads(args["model_config"])
        parameters = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        self.model = config["name"]
        runtime = Runtime.open(parameters["bundle"], device=parameters.get("device") or "auto")
        folder = parameters.get("rules") or None
        rules = FolderRules(folder, runtime.manifest) if folder else {}
        by_reference = parameters.get("shared_memory", "true").lower() != "false"
        handlers = Handlers(runtime, rules, frames=SharedFrames() if by_reference else None)
        self.infer = {contract.SEGMENT: handlers.segment, contract.APPLY: handlers.apply,
                      contract.INDUCE: Inducer(runtime, rules, folder).induce}[self.model]  # fmt: skip
        self.inputs = contract.INPUTS[self.model]
        self.outputs = contract.INDUCE_OUTPUTS if self.model == contract.INDUCE else contract.OUTPUTS

    def execute(self, requests) -> list:
        import triton_python_backend_utils as pb_utils

        def tensor(request, name):
            found = pb_utils.get_input_tensor_by_name(request, name)
            return None if found is None else found.as_numpy()

        answers = self.infer([{spec.name: tensor(request, spec.name) for spec in self.inputs} for request in requests])
        return [pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor(spec.name, np.asarray(answer[spec.name], dtype=object if spec.dtype is np.bytes_ else
                                                  spec.dtype)) for spec in self.outputs])
                for answer in answers]  # fmt: skip

    def finalize(self) -> None:
        self.infer = None
