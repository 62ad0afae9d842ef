"""The docs stay true: the API reference is current and complete, every
study has its page in docs/studies.md, links resolve."""

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).parent.parent


def load_api_generator():
    spec = importlib.util.spec_from_file_location("build", ROOT / "docs" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_public_name_has_a_docstring():
    missing = [name for name, _, doc in load_api_generator().entries() if not doc.strip()]
    assert missing == []


def test_the_api_reference_is_current():
    generator = load_api_generator()
    assert (ROOT / "docs" / "api.md").read_text() == generator.markdown(), "run: python docs/build.py"
    assert (ROOT / "docs" / "studies.md").read_text() == generator.studies_markdown(), "run: python docs/build.py"


def test_every_study_has_a_page_and_a_row_in_the_readme():
    studies = sorted(path.stem for path in (ROOT / "studies").glob("*.py") if not path.stem.startswith("_"))
    pages = (ROOT / "docs" / "studies.md").read_text()
    readme = (ROOT / "README.md").read_text()
    for study in studies:
        assert f"## {study}" in pages, study
        assert f"studies/{study}.py" in readme, study


def test_relative_links_in_markdown_resolve():
    for page in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        for target in re.findall(r"\]\(([^)#:]+)\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name} links to missing {target}"
