"""Cluster configs and pre-flight checks, without a Ray cluster.

- Every file in cluster/ parses; the launcher config passes Ray's own validation.
- The commands in the RayJob, the launcher config and docs/cluster.md are real raymmft commands on
  real search_spaces/ files (parsed by the CLI's parser), so they cannot drift from the code.
- Security: no rule opens the Ray ports to the internet; token auth is on everywhere.
- Storage: a local path on a multi-node cluster and an unwritable storage fail with exact messages.
- Size: a node with G GPUs runs floor(G / (workers x gpus_per_worker)) trials at once; an autoscaling
  cluster is sized by what it can grow to.
"""

from __future__ import annotations

import argparse
import math
import re
import shlex
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from raymmft.cli import COMMANDS, build_parser
from raymmft.cluster import (
    MARKER_PREFIX,
    ClusterSummary,
    check_storage,
    cluster_summary,
)
from raymmft.config_file import load_config
from raymmft.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
DOCS = REPO / "docs" / "cluster.md"
RAY_PORTS = (8265, 6379, 10001)
WORLD = ("0.0.0.0/0", "::/0")


def _yaml(name: str):
    return yaml.safe_load((CLUSTER / name).read_text())


# ---------------------------------------------------------------- the files parse


def test_every_cluster_yaml_parses_to_a_mapping():
    files = sorted(CLUSTER.glob("*.yaml"))
    assert {f.name for f in files} >= {"aws-gpu.yaml", "rayjob.yaml", "runtime_env.yaml"}
    for f in files:
        docs = list(yaml.safe_load_all(f.read_text()))
        assert docs and all(isinstance(d, dict) and d for d in docs), f.name


def test_launcher_config_passes_rays_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = prepare_config(_yaml("aws-gpu.yaml"))
    validate_config(cfg)  # Ray's schema and node-type checks; raises on a bad config
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["resources"].get("CPU") == 0
    assert re.match(r"(m|c|r)\d", head["node_config"]["InstanceType"])  # a CPU instance
    workers = {k: v for k, v in types.items() if k != cfg["head_node_type"]}
    assert workers
    for name, node in workers.items():
        assert re.match(r"(g|p)\d", node["node_config"]["InstanceType"]), name  # GPU instances
        assert node["min_workers"] == 0 < node["max_workers"], name  # autoscaling from zero


def test_launcher_installs_this_checkout_on_every_node():
    cfg = _yaml("aws-gpu.yaml")
    remote = next(r for r, local in cfg["file_mounts"].items() if local == ".")
    installs = [c for c in cfg["setup_commands"] if "pip install" in c and remote in c.split()]
    assert installs, f"no setup command pip-installs the mounted checkout {remote}"
    venv_bin = Path(shlex.split(installs[0])[0]).parent  # ~/raymmft-venv/bin
    # `ray start` runs from that venv, so a job's `raymmft` / `python` resolve to it.
    for cmd in cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"]:
        assert f"source {venv_bin}/activate" in cmd, cmd


# ---------------------------------------------------------------- security


def _public_ray_ports(rule: dict) -> set[int]:
    """Ray ports an EC2 ingress rule opens to the whole internet."""
    ranges = [r.get("CidrIp") for r in rule.get("IpRanges", [])]
    ranges += [r.get("CidrIpv6") for r in rule.get("Ipv6Ranges", [])]
    if not any(r in WORLD for r in ranges):
        return set()
    if str(rule.get("IpProtocol")) == "-1":
        return set(RAY_PORTS)
    lo, hi = int(rule.get("FromPort", -1)), int(rule.get("ToPort", -1))
    return {p for p in RAY_PORTS if lo <= p <= hi}


def test_public_port_check_catches_an_open_dashboard():
    bad = {
        "FromPort": 8000,
        "ToPort": 9000,
        "IpProtocol": "tcp",
        "IpRanges": [{"CidrIp": "0.0.0.0/0"}],
    }
    assert _public_ray_ports(bad) == {8265}
    assert _public_ray_ports({"IpProtocol": "-1", "Ipv6Ranges": [{"CidrIpv6": "::/0"}]}) == set(
        RAY_PORTS
    )
    vpc_only = {**bad, "IpRanges": [{"CidrIp": "10.0.0.0/16"}]}
    assert _public_ray_ports(vpc_only) == set()


def test_no_cluster_config_opens_ray_ports_to_the_internet():
    cfg = _yaml("aws-gpu.yaml")
    rules = list(cfg["provider"].get("security_group", {}).get("IpPermissions", []))
    for node in cfg["available_node_types"].values():
        assert "SecurityGroupIds" not in node["node_config"]  # Ray's SSH-only group applies
    assert all(not _public_ray_ports(r) for r in rules)
    rayjob = _yaml("rayjob.yaml")
    head = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]
    assert head["serviceType"] == "ClusterIP"
    text = (CLUSTER / "rayjob.yaml").read_text()
    body = "\n".join(line.split("#")[0] for line in text.splitlines())  # not the comments
    assert "LoadBalancer" not in body and "NodePort" not in body and "Ingress" not in body


def test_token_auth_is_on_everywhere():
    cfg = _yaml("aws-gpu.yaml")
    starts = [c for c in cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"]]
    starts = [c for c in starts if "ray start" in c]
    assert len(starts) == 2
    assert all("RAY_AUTH_MODE=token ray start" in c for c in starts)
    assert cfg["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert _yaml("rayjob.yaml")["spec"]["rayClusterSpec"]["authOptions"]["mode"] == "token"
    docs = DOCS.read_text()
    assert "RAY_AUTH_MODE=disabled" not in docs
    assert docs.count("export RAY_AUTH_MODE=token") >= 3  # local, AWS, Kubernetes


# ---------------------------------------------------------------- commands cannot drift


def _raymmft_argv(command: str) -> list[str] | None:
    """The arguments after ``raymmft`` / ``python -m raymmft.cli`` in a shell command."""
    words = shlex.split(command)
    for i, w in enumerate(words):
        if w == "raymmft" or w.endswith("/bin/raymmft"):
            rest = words[i + 1 :]
        elif w == "-m" and i + 1 < len(words) and words[i + 1] == "raymmft.cli":
            rest = words[i + 2 :]
        else:
            continue
        for j, r in enumerate(rest):  # stop at a shell operator
            if r in ("|", "&&", ";", ">", "2>&1", "||"):
                return rest[:j]
        return rest
    return None


def _check_raymmft_command(argv: list[str], where: str) -> None:
    assert argv and argv[0] in COMMANDS, f"{where}: '{argv[:1]}' is not a raymmft subcommand"
    parser = build_parser()
    args = parser.parse_args(argv)  # exits (SystemExit) on an unknown flag
    # argparse also accepts abbreviations (--nam for --name); a config must spell flags in full.
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    known = sub.choices[argv[0]]._option_string_actions
    for word in argv[1:]:
        if word.startswith("--"):
            assert word.split("=")[0] in known, f"{where}: '{word}' is not a flag of {argv[0]}"
    if argv[0] in ("search", "train"):
        path = REPO / args.config
        assert args.config.startswith("search_spaces/") and path.is_file(), (where, args.config)
        cfg = load_config(path, args.overrides)  # validates the file and the --set overrides
        assert cfg.search.num_samples >= 1


def test_rayjob_entrypoint_is_a_raymmft_search_on_a_real_search_space():
    spec = _yaml("rayjob.yaml")["spec"]
    argv = _raymmft_argv(spec["entrypoint"])
    _check_raymmft_command(argv, "cluster/rayjob.yaml")
    args = build_parser().parse_args(argv)
    assert args.command == "search"
    assert re.match(r"(s3|gs)://", args.storage), "a RayJob's results must outlive its pods"
    assert spec["shutdownAfterJobFinishes"] is True
    # The image keeps search_spaces/ in /app, and the pods run `ray start` there.
    for group in [
        spec["rayClusterSpec"]["headGroupSpec"],
        *spec["rayClusterSpec"]["workerGroupSpecs"],
    ]:
        for container in group["template"]["spec"]["containers"]:
            assert container["workingDir"] == "/app"
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    assert (
        "WORKDIR /app" in dockerfile
        and "COPY --chown=ray:users search_spaces ./search_spaces" in dockerfile
    )


def _doc_commands() -> list[str]:
    """Shell commands of docs/cluster.md's fenced bash blocks, continuation lines joined."""
    blocks = re.findall(r"```bash\n(.*?)```", DOCS.read_text(), flags=re.S)
    commands = []
    for block in blocks:
        joined = block.replace("\\\n", " ")
        commands += [
            c.strip() for c in joined.splitlines() if c.strip() and not c.strip().startswith("#")
        ]
    return commands


def test_docs_commands_are_real_raymmft_commands():
    found = 0
    for command in _doc_commands():
        argv = _raymmft_argv(command)
        if argv is None or "pip" in command.split():
            continue
        _check_raymmft_command(argv, f"docs/cluster.md: {command}")
        found += 1
    assert found >= 4


def test_docs_job_submissions_use_the_runtime_env_and_a_named_cluster_file():
    submits = [
        c
        for c in _doc_commands()
        if c.startswith(("ray job submit", "RAY_AUTH_MODE=token ray job submit"))
    ]
    assert len(submits) >= 2
    for c in submits:
        words = shlex.split(c)
        if "--runtime-env" in words:
            assert (REPO / words[words.index("--runtime-env") + 1]).is_file(), c
        assert _raymmft_argv(c), c  # the entrypoint is raymmft
    for c in _doc_commands():
        words = shlex.split(c)
        for w in words:
            if w.startswith("cluster/"):
                assert (REPO / w).is_file(), c
        if "ray" in words and "start" in words and "--head" in words:
            # The local head's dashboard / job API listens on loopback only.
            assert words[words.index("--dashboard-host") + 1] == "127.0.0.1", c


def test_every_placeholder_of_the_configs_is_explained_in_the_docs():
    docs = DOCS.read_text()
    for name in ("aws-gpu.yaml", "rayjob.yaml"):
        for placeholder in set(
            re.findall(r"REPLACE_WITH_[A-Z0-9_]+", (CLUSTER / name).read_text())
        ):
            assert placeholder in docs, (name, placeholder)


def test_runtime_env_uploads_the_code_and_search_spaces_but_not_the_venv_or_results():
    from ray._private.runtime_env.packaging import _dir_travel, _get_excludes

    env = _yaml("runtime_env.yaml")
    assert "working_dir" not in env  # given by --working-dir
    uploaded: list[str] = []
    _dir_travel(
        REPO,
        [_get_excludes(REPO, env["excludes"])],
        lambda p: uploaded.append(p.relative_to(REPO).as_posix()) if p.is_file() else None,
        include_gitignore=False,  # the excludes alone must do it
    )
    assert "raymmft/cli.py" in uploaded and "search_spaces/demo.yaml" in uploaded
    assert "cluster/runtime_env.yaml" in uploaded
    assert not [p for p in uploaded if p.startswith((".venv/", ".git/", "raymmft_results/"))]
    assert not [p for p in uploaded if "__pycache__" in p]


# ---------------------------------------------------------------- storage


def test_local_storage_on_a_multi_node_cluster_is_an_error(tmp_path):
    path = str(tmp_path / "results")
    with pytest.raises(ConfigError) as err:
        check_storage(path, num_nodes=2)
    assert str(err.value) == (
        f"storage '{path}' is a local path but this cluster has up to 2 nodes: each node would "
        f"keep its trials' checkpoints and results on its own disk. Use shared storage: an s3:// "
        f"or gs:// URI (--storage s3://bucket/raymmft), or an NFS mount present at the same path "
        f"on every node, declared with --set storage.shared=true"
    )
    assert not (tmp_path / "results").exists()  # rejected before anything is written


def test_local_storage_is_fine_on_one_node_or_when_shared(tmp_path):
    for nodes, shared, name in ((1, False, "one"), (3, True, "nfs")):
        path = tmp_path / name / "results"
        check_storage(str(path), num_nodes=nodes, shared=shared)
        assert path.is_dir()
        assert not [p for p in path.iterdir() if p.name.startswith(MARKER_PREFIX)]


def test_unwritable_local_storage_names_the_path(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    path = str(blocker / "results")
    with pytest.raises(ConfigError) as err:
        check_storage(path, num_nodes=1)
    assert str(err.value) == (
        f"storage '{path}' is not writable (Not a directory); give a directory you can write "
        f"to with --storage or storage.path"
    )


def test_uri_storage_is_written_once_and_cleaned_up(tmp_path):
    target = tmp_path / "bucket" / "raymmft"
    check_storage(f"file://{target}", num_nodes=1)
    assert target.is_dir() and list(target.iterdir()) == []


def test_file_uri_is_local_storage(tmp_path):
    """file:// names each node's own disk, as a plain path does: shared only when declared."""
    uri = f"file://{tmp_path / 'results'}"
    with pytest.raises(ConfigError, match=rf"^storage '{re.escape(uri)}' is a local path but"):
        check_storage(uri, num_nodes=4)
    check_storage(uri, num_nodes=4, shared=True)
    assert (tmp_path / "results").is_dir()


def test_unwritable_uri_storage_names_the_uri(tmp_path):
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(ConfigError) as err:
        check_storage("foo://bucket/raymmft", num_nodes=2)
    assert str(err.value) == (
        "storage 'foo://bucket/raymmft' is not writable (Unrecognized filesystem type in URI: "
        "foo://bucket/raymmft); check the URI and this node's credentials for it"
    )
    uri = f"file://{tmp_path / 'a-file' / 'raymmft'}"
    with pytest.raises(ConfigError, match=rf"^storage '{re.escape(uri)}' is not writable \("):
        check_storage(uri, num_nodes=1)


def test_storage_inside_a_jobs_working_dir_is_an_error():
    path = "/tmp/ray/session_1/runtime_resources/working_dir_files/_ray_pkg_ab12/raymmft_results"
    with pytest.raises(ConfigError) as err:
        check_storage(path, num_nodes=1)
    assert str(err.value) == (
        f"storage '{path}' is inside this job's temporary working directory, which Ray deletes "
        f"after the job; give an absolute path or an s3:// / gs:// URI (--storage s3://bucket/raymmft)"
    )


# ---------------------------------------------------------------- cluster size


def _fake_ray(nodes: list[tuple[bool, dict]]):
    total: dict[str, float] = {}
    for alive, res in nodes:
        if alive:
            for k, v in res.items():
                total[k] = total.get(k, 0.0) + v
    return SimpleNamespace(
        nodes=lambda: [{"Alive": a, "Resources": r} for a, r in nodes],
        cluster_resources=lambda: dict(total),
    )


def _group(max_count: int, **resources):
    return SimpleNamespace(max_count=max_count, resources=resources)


def test_cluster_summary_counts_alive_nodes_and_resources():
    ray = _fake_ray(
        [(True, {"CPU": 8}), (True, {"CPU": 96, "GPU": 8}), (False, {"CPU": 96, "GPU": 8})]
    )
    s = cluster_summary(ray, autoscaler_config=SimpleNamespace(node_group_configs=[]))
    assert (s.nodes, s.cpus, s.gpus, s.max_nodes) == (2, 104.0, 8.0, None)
    assert str(s) == "2 nodes, 104 CPUs, 8 GPUs"
    with pytest.raises(ConfigError, match="this cluster has up to 2 nodes"):
        check_storage("/shared/results", num_nodes=s.reachable_nodes)


def test_autoscaling_cluster_is_sized_by_what_it_can_grow_to():
    # The launcher config's shape: a CPU head and up to 2 p4d (8 GPUs) + 4 g5 (4 GPUs) workers.
    head_only = _fake_ray([(True, {"CPU": 0})])
    config = SimpleNamespace(
        node_group_configs=[
            _group(1, CPU=0),
            _group(2, CPU=96, GPU=8),
            _group(4, CPU=48, GPU=4),
        ],
        max_resources={},
    )
    s = cluster_summary(head_only, autoscaler_config=config)
    assert (s.nodes, s.gpus, s.max_nodes) == (1, 0.0, 7)
    assert s.reachable_resources(head_only.cluster_resources()) == {"CPU": 384.0, "GPU": 32.0}
    assert str(s) == "1 node, 0 CPUs, 0 GPUs (autoscaling to 7 nodes, 384 CPUs, 32 GPUs)"
    # A local path is refused although only the head is up now.
    with pytest.raises(ConfigError, match="this cluster has up to 7 nodes"):
        check_storage("/home/ubuntu/results", num_nodes=s.reachable_nodes)
    capped = SimpleNamespace(
        node_group_configs=config.node_group_configs, max_resources={"GPU": 16}
    )
    assert cluster_summary(head_only, autoscaler_config=capped).max_resources["GPU"] == 16.0
    unbounded = SimpleNamespace(
        node_group_configs=[_group(1, CPU=0), _group(-1, CPU=8, GPU=1)], max_resources={}
    )
    grown = cluster_summary(head_only, autoscaler_config=unbounded)
    assert grown.max_nodes >= 1000 and grown.max_resources["GPU"] >= 1000
    assert grown.max_resources["CPU"] >= 1000  # the head's CPU: 0 does not make it nan


def _gpu_config(workers: int, gpus_per_worker: float, num_samples: int = 64):
    return load_config(
        REPO / "search_spaces" / "demo.yaml",
        [
            "resources.use_gpu=true",
            f"resources.num_workers={workers}",
            f"resources.gpus_per_worker={gpus_per_worker}",
            "resources.cpus_per_worker=1",
            f"search.num_samples={num_samples}",
        ],
    )


@pytest.mark.parametrize("gpus", [1, 2, 4, 8])
@pytest.mark.parametrize("workers,gpus_per_worker", [(1, 1), (2, 1), (3, 1), (1, 0.5), (2, 2)])
def test_local_multi_gpu_runs_floor_g_over_workers_trials_at_once(gpus, workers, gpus_per_worker):
    from raymmft.search import concurrent_trials

    cfg = _gpu_config(workers, gpus_per_worker)
    node = {"CPU": 128.0, "GPU": float(gpus)}
    need = workers * gpus_per_worker
    if need > gpus:
        with pytest.raises(ConfigError, match=f"a trial needs {need:g} GPU"):
            concurrent_trials(cfg, node)
    else:
        assert concurrent_trials(cfg, node) == math.floor(gpus / need)


def test_autoscaling_cluster_runs_trials_on_nodes_it_has_not_started_yet():
    from raymmft.search import concurrent_trials

    cfg = _gpu_config(8, 1)  # the ImageNet configs' shape: 8 workers x 1 GPU
    head_only = {"CPU": 0.0}
    with pytest.raises(ConfigError):
        concurrent_trials(cfg, head_only)  # what the head alone says: never schedulable
    grown = ClusterSummary(1, 0, 0, max_nodes=3, max_resources={"CPU": 192, "GPU": 16})
    assert concurrent_trials(cfg, grown.reachable_resources(head_only)) == 2
