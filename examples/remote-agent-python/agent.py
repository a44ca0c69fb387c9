"""An example remote cadre agent in Python: serves cadre.v1.AgentService with grpcio.

Usage: agent.py [--listen 127.0.0.1:50052] — prints `listening on ADDR` once it serves.
Needs grpcio and grpcio-tools (scripts/setup.sh installs them in $CADRE_MCP_DIR/grpc); the
stubs are generated from the repository's proto/ when it starts. Name it in the node's config
as `agent: { remote: "http://ADDR", tools: [...] }`.

What it does, deterministically: on an exec's first step it says what it is working on and
asks the node to call its tool ($AGENT_TOOL, default skills.list_skills, with $AGENT_ARGS,
default {}); once the result is in the history, it answers with it and the exec completes. It
keeps no state: everything it needs is in the history the node sends.
"""

import argparse
import atexit
import os
import shutil
import signal
import sys
import tempfile
from concurrent import futures

import grpc
import grpc_tools
from grpc_tools import protoc

PROTO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "proto")
stubs = tempfile.mkdtemp(prefix="cadre-agent-stubs-")
atexit.register(shutil.rmtree, stubs, ignore_errors=True)
# Stopped with SIGTERM (as a supervisor stops it), it exits normally: the stubs go too.
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
if protoc.main([
    "protoc",
    f"-I{PROTO}",
    f"-I{os.path.join(os.path.dirname(grpc_tools.__file__), '_proto')}",
    f"--python_out={stubs}",
    f"--grpc_python_out={stubs}",
    "cadre/v1/events.proto",
    "cadre/v1/agent.proto",
]) != 0:
    sys.exit("cannot generate the gRPC stubs from " + PROTO)
sys.path.insert(0, stubs)

from cadre.v1 import agent_pb2, agent_pb2_grpc  # noqa: E402

TOOL = os.environ.get("AGENT_TOOL", "skills.list_skills")
ARGS = os.environ.get("AGENT_ARGS", "{}")


class Agent(agent_pb2_grpc.AgentServiceServicer):
    def Step(self, request, context):
        text, result = "", None
        for e in request.history:
            if e.exec_id != request.exec_id:
                continue
            kind = e.WhichOneof("kind")
            if kind == "input_received":
                text = e.input_received.text
            elif kind == "tool_returned":
                r = e.tool_returned
                result = r.result_json if r.WhichOneof("outcome") == "result_json" else "error: " + r.error
        if result is not None:
            yield agent_pb2.StepReply(output=f"python agent: {TOOL} returned {result}")
            return
        if TOOL not in [t.name for t in request.tools]:
            yield agent_pb2.StepReply(fail=f"tool `{TOOL}` is not offered to this agent")
            return
        yield agent_pb2.StepReply(output=f"python agent: working on {text!r}")
        yield agent_pb2.StepReply(tool_call=agent_pb2.ToolCallRequest(tool=TOOL, arguments_json=ARGS))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:50052")
    args = parser.parse_args()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    agent_pb2_grpc.add_AgentServiceServicer_to_server(Agent(), server)
    host = args.listen.rsplit(":", 1)[0]
    port = server.add_insecure_port(args.listen)
    server.start()
    print(f"listening on {host}:{port}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
