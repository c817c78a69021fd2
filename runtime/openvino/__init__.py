"""The OpenVINO backend for cpu bundles: one compiled model per graph the manifest chose it for (`OpenVinoGraph`).
Which graphs: cseg.cpu_backends.plan (the choice itself is made at export, cseg.export.cpu_choice)."""
