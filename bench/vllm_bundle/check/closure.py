import sys, os, re, subprocess, zipfile, glob, json
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name as cn
from packaging.version import Version
from email.parser import Parser
PY = sys.argv[1]  # "3.12"
D = sys.argv[2]   # download dir
PLAT = open(os.path.join(os.path.dirname(__file__), 'plat.txt')).read().split()
INSTALLED = set(cn(x) for x in """torch torchvision torchaudio triton transformers tokenizers safetensors huggingface_hub numpy sentencepiece tiktoken accelerate peft
absl-py aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs certifi charset-normalizer click cloudpickle cmake colorama einops filelock frozenlist fsspec h11 hf-xet httpcore httpx idna jinja2 markupsafe msgpack multidict networkx ninja numba numba-cuda nvidia-ml-py opencv-python-headless packaging pandas pillow pip prometheus-client propcache protobuf psutil py-cpuinfo pyarrow pygments pyyaml regex requests rich scipy setuptools six sympy tqdm typer typing-extensions urllib3 uvloop wheel xxhash yarl zipp pytest
llvmlite mpmath python-dateutil pytz tzdata markdown-it-py mdurl iniconfig pluggy shellingham""".split())
SKIP = set(cn(x) for x in "flashinfer-python flashinfer-cubin nvidia-cutlass-dsl tilelang apache-tvm-ffi quack-kernels torchcodec PyNvVideoCodec ray xformers".split())
env = dict(python_version=PY, python_full_version=PY+".3", sys_platform="linux", platform_system="Linux", platform_machine="x86_64", os_name="posix", implementation_name="cpython", platform_python_implementation="CPython")
reqs = {}   # name -> list of (spec str, parent)
extras = {}
skipped_refs = {}
def add(rs, parent):
    r = Requirement(rs)
    n = cn(r.name)
    if r.marker is not None:
        ok = False
        for ex in ([""] + sorted(extras.get(cn(parent), set()) if parent else [""])):
            e = dict(env); e["extra"] = ex
            if r.marker.evaluate(e): ok = True
        if not ok: return
    if n.startswith("nvidia-") and n not in ("nvidia-cudnn-frontend",) or n in INSTALLED or n in SKIP:
        skipped_refs.setdefault(n, []).append(f"{parent}: {rs}")
        return
    reqs.setdefault(n, []).append((str(r.specifier), parent, r.name))
    if r.extras:
        extras.setdefault(n, set()).update(r.extras)
chosen = {}  # name -> (version, wheelfile, extras_done)
for line in open(sys.argv[3]):
    line=line.strip()
    if line: add(line, "vllm")
while True:
    todo = []
    for n, lst in reqs.items():
        spec = ",".join(s for s,_,_ in lst if s)
        key = (spec, tuple(sorted(extras.get(n, ()))))
        if n in chosen and chosen[n][2] == key: continue
        todo.append((n, spec, key))
    if not todo: break
    args = [f"{n}{s}" for n, s, _ in todo]
    print("downloading", args, flush=True)
    out = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", PY, "--implementation", "cp", *PLAT, "-d", D, *args], capture_output=True, text=True)
    if out.returncode: print(out.stderr[-3000:]); sys.exit(1)
    # map names to wheel files: pick the newest wheel per name satisfying spec
    files = glob.glob(D + "/*.whl")
    for n, spec, key in todo:
        from packaging.specifiers import SpecifierSet
        ss = SpecifierSet(spec)
        cands = []
        for f in files:
            b = os.path.basename(f).split("-")
            if cn(b[0]) == n and Version(b[1]) in ss: cands.append((Version(b[1]), f))
        cands.sort()
        v, f = cands[-1]
        with zipfile.ZipFile(f) as z:
            m = [x for x in z.namelist() if x.endswith(".dist-info/METADATA")][0]
            md = Parser().parsestr(z.read(m).decode())
        chosen[n] = (str(v), f, key)
        for rd in md.get_all("Requires-Dist") or []:
            add(rd, n)
json.dump({n: [v, os.path.basename(f)] for n, (v, f, _) in chosen.items()}, open(D + "/chosen.json", "w"), indent=1, sort_keys=True)
json.dump({n: sorted(set(x)) for n, x in skipped_refs.items()}, open(D + "/skipped_refs.json", "w"), indent=1, sort_keys=True)
for n in sorted(chosen): print(n, chosen[n][0], os.path.basename(chosen[n][1]))
