import os

import pytest

from phiexport.errors import UsageError
from phiexport.package.publish import staged_output


def test_success_renames_the_staging_directory_into_place(tmp_path):
    output = tmp_path / "out"
    with staged_output(output, force=False) as staging:
        (staging / "model.onnx").write_text("x")
    assert (output / "model.onnx").read_text() == "x"
    assert os.listdir(tmp_path) == ["out"]


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_failure_leaves_nothing_behind(tmp_path, error):
    output = tmp_path / "out"
    with pytest.raises(type(error)), staged_output(output, force=False) as staging:
        (staging / "half-written.onnx").write_text("x")
        raise error
    assert os.listdir(tmp_path) == []


def test_existing_output_needs_force(tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    with pytest.raises(UsageError, match="already exists") as caught, staged_output(output, force=False):
        pass
    assert "--force" in caught.value.fix


def test_force_replaces_only_after_success(tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    (output / "old").write_text("old")
    with pytest.raises(RuntimeError), staged_output(output, force=True) as staging:
        (staging / "new").write_text("new")
        raise RuntimeError
    assert (output / "old").is_file()  # the failed rebuild did not touch the published package
    with staged_output(output, force=True) as staging:
        (staging / "new").write_text("new")
    assert sorted(os.listdir(output)) == ["new"]
    assert os.listdir(tmp_path) == ["out"]


def test_output_under_a_file_is_refused(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    with pytest.raises(UsageError, match="cannot write into") as caught, staged_output(blocker / "out", force=False):
        pass
    assert "--output" in caught.value.fix


def test_staging_left_by_a_killed_build_is_swept(tmp_path):
    dead = tmp_path / ".out.partial-999999999-abc"  # no such pid
    alive = tmp_path / f".out.partial-{os.getpid()}-def"  # a build still running (this process)
    dead.mkdir()
    alive.mkdir()
    with staged_output(tmp_path / "out", force=False):
        pass
    assert not dead.exists()
    assert alive.exists()


def test_a_published_package_is_readable_as_the_umask_allows(tmp_path):
    """The staging folder is private (700); the package is not: folders 755 and files 644 under umask 022, including
    a file its writer created 600 (onnx external data written through mkstemp)."""
    output = tmp_path / "out"
    previous = os.umask(0o022)
    try:
        with staged_output(output, force=False) as staging:
            (staging / "cpu").mkdir(mode=0o700)
            data = staging / "cpu" / "model.onnx.data"
            data.write_text("x")
            data.chmod(0o600)
    finally:
        os.umask(previous)
    modes = {p.relative_to(tmp_path).as_posix(): p.stat().st_mode & 0o777 for p in [output, *output.rglob("*")]}
    assert modes == {"out": 0o755, "out/cpu": 0o755, "out/cpu/model.onnx.data": 0o644}


def test_an_output_published_meanwhile_is_not_replaced(tmp_path):
    """Two builds into the same output: the one finishing second fails in one line naming where its work is kept,
    and the first one's package stays."""
    output = tmp_path / "out"
    appeared = pytest.raises(UsageError, match="appeared while this build ran")
    with appeared as caught, staged_output(output, force=False) as staging:
        (staging / "second").write_text("second")
        output.mkdir()  # the other build publishes first
        (output / "first").write_text("first")
    kept = tmp_path / f"out.unpublished-{os.getpid()}"
    assert str(kept) in str(caught.value)
    assert os.listdir(output) == ["first"] and os.listdir(kept) == ["second"]
    assert "--force" in caught.value.fix
