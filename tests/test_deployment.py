"""What users of the workflow get besides the code: the rules' conda environment, the config's
documentation, and what the Snakemake workflow catalog and snakedeploy look for."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from importlib.metadata import version

import yaml
from packaging.requirements import Requirement

from conftest import REPO
from virnucpro.run.config import package_requirement

ENVIRONMENT = REPO / "envs" / "virnucpro.yaml"


def pip_section() -> list[str]:
    dependencies = yaml.safe_load(ENVIRONMENT.read_text())["dependencies"]
    return next(entry["pip"] for entry in dependencies if isinstance(entry, dict))


def project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def test_the_environment_pins_every_dependency_to_the_version_the_tests_run_with():
    pins = {Requirement(line).name.lower(): str(Requirement(line).specifier) for line in pip_section()
            if not line.startswith("$")}
    assert set(pins) == {Requirement(line).name.lower() for line in project()["dependencies"]}
    for name, specifier in pins.items():
        installed = version(name).split("+")[0]  # torch's local version: the CPU build here
        assert specifier == f"=={installed}", name
    assert f"virnucpro {project()['version']}" in ENVIRONMENT.read_text()  # a new version, a new environment


def test_the_environment_installs_the_package_that_snakemake_imports(tmp_path):
    """As conda does it: the pip section, from a copy of the file elsewhere (Snakemake's
    .snakemake/conda/), goes to pip as a requirements file, which expands ${VIRNUCPRO_PACKAGE}."""
    assert package_requirement() == str(REPO)  # the checkout these tests run from
    checkout = tmp_path / "checkout"  # a copy of it, which the build may write into
    shutil.copytree(REPO / "src", checkout / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy(REPO / "pyproject.toml", checkout)
    copy = tmp_path / "conda"
    copy.mkdir()
    requirements = copy / "condaenv.requirements.txt"
    requirements.write_text("\n".join(line for line in pip_section() if line.startswith("$")) + "\n")
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                             "--no-index", "--target", str(tmp_path / "site"), "-r", str(requirements)], cwd=copy,
                            env={**os.environ, "VIRNUCPRO_PACKAGE": str(checkout)}, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    installed = tmp_path / "site" / "virnucpro"
    assert (installed / "model_store" / "download.py").read_text() == (REPO / "src/virnucpro/model_store/download.py").read_text()
    assert not list((tmp_path / "site").glob("__editable__*"))  # a copy, not a link to the checkout


def schema_keys(schema: dict, prefix: str = "") -> list[str]:
    keys = []
    for name, value in schema.get("properties", {}).items():
        keys.append(prefix + name)
        keys += schema_keys(value, f"{prefix}{name}.")
    return keys


def test_config_readme_describes_every_key():
    readme = (REPO / "config" / "README.md").read_text()
    schemas = REPO / "workflow" / "schemas"
    config_keys = schema_keys(yaml.safe_load((schemas / "config.schema.yaml").read_text()))
    columns = [*schema_keys(yaml.safe_load((schemas / "samples.schema.yaml").read_text())),
               *schema_keys(yaml.safe_load((schemas / "training_inputs.schema.yaml").read_text()))]
    assert "models.esm2" in config_keys and "path" in columns  # nested keys and the tables' columns
    missing = [key for key in config_keys + columns if f"`{key}`" not in readme]
    assert not missing, f"config/README.md does not describe {missing}"
    for key in re.findall(r"^\| `([a-z_.]+)` \|", readme, re.MULTILINE):
        assert key in config_keys + columns, f"config/README.md describes '{key}', which the schemas do not know"


def test_what_the_workflow_catalog_and_snakedeploy_look_for():
    assert (REPO / "workflow" / "Snakefile").is_file() and (REPO / "config" / "config.yaml").is_file()
    assert (REPO / "config" / "README.md").is_file()
    settings = yaml.safe_load((REPO / ".snakemake-workflow-catalog.yml").read_text())
    assert settings["usage"]["software-stack-deployment"] == {"conda": True}
    assert "--resources gpu=" in settings["usage"]["mandatory-flags"]["flags"]


def test_make_demo_installs_the_runtime_dependencies_only(tmp_path):
    """The test extras (fair-esm, Triton, ...) are a few GB that the demo does not need."""
    def pip_installs(target: str) -> list[str]:
        plan = subprocess.run(["make", "-n", target, f"VENV={tmp_path / 'venv'}"], cwd=REPO, capture_output=True,
                              text=True, check=True).stdout
        return [line for line in plan.splitlines() if "pip install" in line and "-e" in line.split()]

    assert [line.split()[-1] for line in pip_installs("demo")] == ["."]
    assert [line.split()[-1] for line in pip_installs("test")] == [".", "'.[test]'"]


def test_config_readme_gives_the_defaults_of_config_yaml():
    """Each key's default in config/README.md is its value in config/config.yaml."""
    readme = (REPO / "config" / "README.md").read_text()
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    for key, default in re.findall(r"^\| `([a-z_.]+)` \| `([^`]*)` \|", readme, re.MULTILINE):
        value = config
        for part in key.split("."):
            value = value[part]
        shown = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
        assert default in (str(value), shown), (key, default, value)
