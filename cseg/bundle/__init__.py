"""cseg.bundle: the bundle on disk, shared by the exporter (which writes it), the runtime and `cseg build` (which read
it) and `cseg inspect` (which reports it).

    schema.py   manifest.json's JSON Schema and size checks, read_manifest / validate_manifest, file hashing
    verify.py   every file the runtime loads: listed, inside the bundle, a regular file, its sha256
    report.py   `cseg inspect`: a manifest as a readable report
    writer.py   the manifest writer: manifest.json's content, hashed, validated and written last
"""
