"""Spawn and supervise an actor from Python over cadre's gRPC API (grpcio), with no YAML.

Usage: spawn.py [--server 127.0.0.1:7400] [--token TOKEN]

Needs grpcio and grpcio-tools (scripts/setup.sh installs them in $CADRE_MCP_DIR/grpc); the
stubs are generated from the repository's proto/ when it starts. What it does, printing one
line a step:
  1. spawns a supervised process `root/sleeper` (`sleep 1000`) with a typed ActorSpec;
  2. shows that a bad spec is refused with INVALID_ARGUMENT naming the field;
  3. watches the tree (WatchTree), SIGKILLs the process, and waits until its supervisor has
     restarted it;
  4. reads the actor back (Get): restarts and how its last instance ended;
  5. stops it, which removes a spawned actor for good.
It must run on the node's machine (it kills the process by its pid).
"""

import argparse
import atexit
import os
import queue
import shutil
import signal
import sys
import tempfile
import threading

import grpc
import grpc_tools
from grpc_tools import protoc

PROTO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "proto")
stubs = tempfile.mkdtemp(prefix="cadre-spawn-stubs-")
atexit.register(shutil.rmtree, stubs, ignore_errors=True)
if protoc.main([
    "protoc",
    f"-I{PROTO}",
    f"-I{os.path.join(os.path.dirname(grpc_tools.__file__), '_proto')}",
    f"--python_out={stubs}",
    f"--grpc_python_out={stubs}",
    "cadre/v1/actors.proto",
]) != 0:
    sys.exit("cannot generate the gRPC stubs from " + PROTO)
sys.path.insert(0, stubs)

from cadre.v1 import actors_pb2 as pb, actors_pb2_grpc  # noqa: E402

PATH = "root/sleeper"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", default=os.environ.get("CADRE_SERVER", "127.0.0.1:7400"))
    parser.add_argument("--token", default=os.environ.get("CADRE_TOKEN"))
    args = parser.parse_args()
    server = args.server.removeprefix("http://")
    metadata = [("authorization", f"Bearer {args.token}")] if args.token else []
    actors = actors_pb2_grpc.ActorsStub(grpc.insecure_channel(server))

    # 1. A supervised process, as typed fields (the same fields as a child in cadre.yaml).
    spec = pb.ActorSpec(
        id="sleeper",
        restart="permanent",
        shutdown="2000",
        process=pb.ProcessActor(command=["sleep", "1000"]),
    )
    node = actors.Spawn(pb.SpawnRequest(parent="root", spec=spec), metadata=metadata)
    print(f"spawned {node.path}: {node.status}, pid {node.pid}", flush=True)

    # 2. A bad spec changes nothing and names the field.
    bad = pb.ActorSpec(id="broken", process=pb.ProcessActor(command=[]))
    try:
        actors.Spawn(pb.SpawnRequest(parent="root", spec=bad), metadata=metadata)
        sys.exit("a spec without a command was accepted")
    except grpc.RpcError as e:
        print(f"refused: {e.code().name}: {e.details()}", flush=True)

    # 3. Watch the tree, kill the process, see its supervisor restart it.
    events = queue.Queue()
    watch = actors.WatchTree(pb.WatchTreeRequest(), metadata=metadata)
    # The node answers (headers) once it has subscribed: no change after this is missed.
    watch.initial_metadata()
    threading.Thread(target=lambda: [events.put(e) for e in watch], daemon=True).start()
    os.kill(node.pid, signal.SIGKILL)
    while True:
        e = events.get(timeout=30)
        if e.path != PATH:
            continue
        print(f"watch: {e.path} {e.change} {e.reason}".rstrip(), flush=True)
        if e.change == "started":
            break
    watch.cancel()

    # 4. Read it back.
    node = actors.Get(pb.ActorRequest(path=PATH), metadata=metadata)
    print(
        f"get: {node.path} {node.status}, restarts {node.restarts}, "
        f"last exit {node.last_exit_reason}, restart {node.restart}, shutdown {node.shutdown}",
        flush=True,
    )

    # 5. Stop it: a spawned actor is removed for good.
    node = actors.Stop(pb.ActorRequest(path=PATH), metadata=metadata)
    print(f"stopped {PATH}: {node.status}", flush=True)


if __name__ == "__main__":
    main()
