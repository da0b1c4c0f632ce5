import importlib, pkgutil, sys, traceback, collections, os
import vllm
skip_prefixes = ("vllm.vllm_flash_attn.cute.benchmark", "vllm.third_party")
names = []
root = os.path.dirname(vllm.__file__)
for dp, dn, fn in os.walk(root):
    dn[:] = [d for d in dn if d not in ("__pycache__",)]
    for f in fn:
        if f.endswith(".py"):
            rel = os.path.relpath(os.path.join(dp, f), os.path.dirname(root))[:-3].replace(os.sep, ".")
            if rel.endswith(".__init__"): rel = rel[:-9]
            names.append(rel)
names.sort()
res = collections.defaultdict(list)
other = []
for n in names:
    if n.startswith(skip_prefixes): continue
    try:
        importlib.import_module(n)
    except ModuleNotFoundError as e:
        res[e.name].append(n)
    except BaseException as e:
        other.append((n, type(e).__name__, str(e).splitlines()[0][:160] if str(e) else ""))
print("total modules", len(names))
for k, v in sorted(res.items(), key=lambda x: -len(x[1])):
    print(f"MISSING {k}: {len(v)} e.g. {v[:4]}")
c = collections.Counter((t, m[:90]) for _, t, m in other)
for (t, m), k in c.most_common(60): print(f"OTHER x{k} {t}: {m}")
