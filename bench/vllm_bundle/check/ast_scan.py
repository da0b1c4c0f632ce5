import ast, os, sys, importlib.util, collections
root = sys.argv[1]
present_extra = {"torchvision", "torchaudio", "torchcodec"}  # on target (torchcodec skipped: reported separately)
res = collections.defaultdict(list)
stdlib = set(sys.stdlib_module_names)
cache = {}
def avail(top):
    if top not in cache:
        try: cache[top] = importlib.util.find_spec(top) is not None
        except Exception: cache[top] = False
    return cache[top]
for dp, dn, fn in os.walk(os.path.join(root, "vllm")):
    for f in fn:
        if not f.endswith(".py"): continue
        p = os.path.join(dp, f)
        try: tree = ast.parse(open(p, encoding="utf-8").read())
        except Exception: continue
        # mark nodes at module level (not in function / try / if)
        def walk(node, guarded):
            for ch in ast.iter_child_nodes(node):
                g = guarded or isinstance(ch, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Try, ast.If, ast.ClassDef)) 
                if isinstance(node, ast.Try) and ch in node.body: g = True
                if isinstance(ch, (ast.Import, ast.ImportFrom)):
                    if isinstance(ch, ast.ImportFrom):
                        if ch.level or not ch.module: continue
                        names = [ch.module]
                    else:
                        names = [a.name for a in ch.names]
                    for n in names:
                        top = n.split(".")[0]
                        if top in ("vllm", "__future__") or top in stdlib or top in present_extra: continue
                        if not avail(top):
                            res[top].append((os.path.relpath(p, root), ch.lineno, "guarded/lazy" if guarded else "TOPLEVEL"))
                walk(ch, g)
        walk(tree, False)
for top, lst in sorted(res.items(), key=lambda x: -len(x[1])):
    tl = [x for x in lst if x[2] == "TOPLEVEL"]
    print(f"{top}: {len(lst)} refs, {len(tl)} module-level; e.g. " + "; ".join(f"{a}:{b}" for a, b, _ in (tl or lst)[:3]))
