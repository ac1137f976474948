"""Build the shaded Jackson jar that the Iceberg Spark runtime jar on PyPI lacks.

``iceberg-spark-runtime`` (from the wheel ``snowpark-connect-deps-iceberg``) refers to
``org.apache.iceberg.shaded.com.fasterxml.jackson.*`` but does not contain it. This merges
the Jackson core/databind/annotations jars that pyspark ships and relocates them with
jarjar (Debian ``libjarjar-java``)::

    python infra/shade_jackson.py OUT.jar
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pyspark

RULE = "rule com.fasterxml.jackson.** org.apache.iceberg.shaded.com.fasterxml.jackson.@1\n"
JARJAR = Path("/usr/share/java/jarjar.jar")


def main(out: str) -> int:
    jars_dir = Path(pyspark.__file__).parent / "jars"
    parts = [next(jars_dir.glob(f"jackson-{name}-2.*.jar")) for name in ("core", "databind", "annotations")]
    with tempfile.TemporaryDirectory() as tmp:
        merged = Path(tmp) / "merged.jar"
        seen: set[str] = set()
        with zipfile.ZipFile(merged, "w", zipfile.ZIP_DEFLATED) as dst:
            for jar in parts:
                with zipfile.ZipFile(jar) as src:
                    for info in src.infolist():
                        name = info.filename
                        if name in seen or name.endswith("module-info.class") or name.startswith("META-INF/versions/"):
                            continue
                        seen.add(name)
                        dst.writestr(info, src.read(name))
        rules = Path(tmp) / "rules.txt"
        rules.write_text(RULE)
        subprocess.run(["java", "-cp", str(JARJAR), "com.tonicsystems.jarjar.Main", "process",
                        str(rules), str(merged), out], check=True)
    print(f"shaded {', '.join(p.name for p in parts)} into {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
