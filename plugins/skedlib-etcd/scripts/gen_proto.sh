#!/usr/bin/env bash
# Regenerate the etcd v3 API modules in skedlib_etcd/_proto/ (committed; not built at install).
#
#   scripts/gen_proto.sh                  regenerate *_pb2.py and *_pb2.pyi from the trimmed
#                                         .proto files already in skedlib_etcd/_proto/
#   scripts/gen_proto.sh --from ETCD_SRC  first copy rpc.proto, kv.proto and auth.proto from an
#                                         etcd source tree (e.g. Debian's golang-etcd-server-dev:
#                                         /usr/share/gocode/src/go.etcd.io/etcd) and trim them
#
# Trimming removes what only Go and the HTTP gateway use (gogoproto options, google.api.http
# annotations), points the imports at the package, so the generated modules import each
# other as skedlib_etcd._proto.*, and prefixes the proto packages with skedlib_etcd. (so
# they cannot clash with another copy of etcd's protos in protobuf's default pool); the
# messages, fields and services are etcd's, unchanged.
#
# grpcio-tools is pinned: 1.72.2 bundles protoc 30.0, whose gencode (protobuf 6.30.0) loads on
# every protobuf runtime from 6.30.0 up to, but excluding, 8 (the runtime must not be older
# than the gencode; Python runtimes accept gencode one major version older). Changing the
# pin changes the lowest protobuf the plugin can declare in pyproject.toml.
set -euo pipefail
GRPCIO_TOOLS_VERSION=1.72.2

here=$(cd "$(dirname "$0")/.." && pwd)  # plugins/skedlib-etcd
out="$here/skedlib_etcd/_proto"
src=""
if [[ "${1:-}" == "--from" ]]; then
  src=${2:?"--from needs the etcd source directory"}
elif [[ $# -gt 0 ]]; then
  echo "usage: $0 [--from ETCD_SRC]" >&2
  exit 2
fi

venv=$(mktemp -d)
trap 'rm -rf "$venv"' EXIT
python3 -m venv "$venv"
"$venv/bin/pip" install -q "grpcio-tools==$GRPCIO_TOOLS_VERSION"

if [[ -n "$src" ]]; then
  "$venv/bin/python" - "$src" "$out" <<'PY'
import re
import sys
from pathlib import Path

src, out = Path(sys.argv[1]), Path(sys.argv[2])
files = {  # where each file lives in etcd's tree (3.4: top level; 3.5+: api/)
    "rpc.proto": ["etcdserver/etcdserverpb/rpc.proto", "api/etcdserverpb/rpc.proto"],
    "kv.proto": ["mvcc/mvccpb/kv.proto", "api/mvccpb/kv.proto"],
    "auth.proto": ["auth/authpb/auth.proto", "api/authpb/auth.proto"],
}
header = ("// etcd's {name} ({origin}), trimmed by scripts/gen_proto.sh: gogoproto options\n"
          "// and google.api.http annotations removed, imports pointed at this package, the\n"
          "// package prefixed with skedlib_etcd. (messages and fields are etcd's).\n")
for name, candidates in files.items():
    path = next((src / c for c in candidates if (src / c).is_file()), None)
    if path is None:
        sys.exit(f"{src}: none of {', '.join(candidates)} exists")
    text = path.read_text()
    text = re.sub(r'^import "(gogoproto/gogo|google/api/annotations)\.proto";\n', "", text,
                  flags=re.M)
    text = re.sub(r"^option \(gogoproto\.[a-z_]+\) = \w+;\n", "", text, flags=re.M)
    while (m := re.search(r"\s*option \(google\.api\.http\) = \{", text)) is not None:
        depth, end = 1, m.end()  # the annotation's braces nest (additional_bindings)
        while depth:
            depth += {"{": 1, "}": -1}.get(text[end], 0)
            end += 1
        text = text[:m.start()] + text[end:].removeprefix(";")
    text = re.sub(r"\s*\[\(gogoproto\.[^\]]*\]", "", text)
    text = re.sub(r'import "[\w/]*/(kv|auth)\.proto";', r'import "skedlib_etcd/_proto/\1.proto";',
                  text)
    # a package of our own, so another copy of etcd's protos in the process (another etcd
    # client) does not clash in protobuf's default pool; rpc.proto's references to
    # mvccpb.X and authpb.X still resolve (to the sibling skedlib_etcd.* packages). Only
    # the service paths carry the package on the wire, and stubs.py spells them etcd's way.
    text, n = re.subn(r"^package (\w+);", r"package skedlib_etcd.\1;", text, flags=re.M)
    if n != 1:
        sys.exit(f"{path}: expected one package statement, found {n}")
    text = text.replace("// for grpc-gateway\n", "")
    text = re.sub(r"\n{3,}", "\n\n", text)
    if "gogoproto" in text or "google.api" in text:
        sys.exit(f"{path}: an annotation was left after trimming")
    (out / name).write_text(header.format(name=name, origin=path.relative_to(src)) + text)
    print(f"trimmed {path} -> {out / name}")
PY
fi

cd "$here"
"$venv/bin/python" -m grpc_tools.protoc -I . --python_out=. --pyi_out=. \
  skedlib_etcd/_proto/kv.proto skedlib_etcd/_proto/auth.proto skedlib_etcd/_proto/rpc.proto
echo "generated $(cd "$out" && ls ./*_pb2.py* | tr '\n' ' ')"
