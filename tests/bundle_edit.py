"""Editing a copy of a test bundle: the hardening tests change a manifest or a file and check what refuses it."""

import json
import shutil

from cseg.bundle.schema import MANIFEST_NAME


def copy_bundle(bundle, tmp_path):
    target = tmp_path / "bundle"
    shutil.copytree(bundle, target)
    return target


def write_manifest(bundle, manifest):
    (bundle / MANIFEST_NAME).write_text(json.dumps(manifest))
