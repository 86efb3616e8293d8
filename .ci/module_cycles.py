#!/usr/bin/env python3
# Usage: python3 .ci/module_cycles.py [src|shards/src] [-v]. Prints "no cycles" or each cycle.
"""Module import graph of src/ (non-test code) and its cycles, at two levels: between sibling
submodules of one parent, and between top-level modules."""
import os, re, sys
root = sys.argv[1] if len(sys.argv) > 1 else 'src'
mods = {}
for d, _, fs in os.walk(root):
    for f in fs:
        if not f.endswith('.rs'): continue
        p = os.path.join(d, f); rel = os.path.relpath(p, root)[:-3].split(os.sep)
        if rel[-1] == 'mod': rel = rel[:-1]
        if rel == ['lib']: rel = []
        mods['::'.join(rel)] = p
def strip_tests(s):
    # drop `#[cfg(test)] mod x { ... }` blocks (brace matched)
    out, i = [], 0
    for m in re.finditer(r'#\[cfg\(test\)\]\s*mod\s+\w+\s*\{', s):
        if m.start() < i: continue
        out.append(s[i:m.start()]); j = m.end(); depth = 1
        while depth and j < len(s):
            depth += {'{': 1, '}': -1}.get(s[j], 0); j += 1
        i = j
    out.append(s[i:]); return ''.join(out)
reexp = {}
lib = open(mods['']).read()
for m in re.finditer(r'pub use (\w+)::\{?([^;]*?)\}?;', lib):
    for name in re.split(r'[,\s]+', m.group(2)):
        if name: reexp[name] = m.group(1)
def resolve(cur, path):
    parts = path.split('::')
    if parts[0] == 'crate': base = []; parts = parts[1:]
    elif parts[0] == 'super':
        base = cur.split('::')[:-1] if cur else []
        # a mod.rs file's `super` is its parent: cur is already the dir module
        parts = parts[1:]
        while parts and parts[0] == 'super': base = base[:-1]; parts = parts[1:]
    elif parts[0] == 'self': base = cur.split('::') if cur else []; parts = parts[1:]
    else: return None
    if not base and parts and parts[0] in reexp: parts = [reexp[parts[0]]] + parts[1:]
    best = None
    for k in range(len(parts), -1, -1):
        cand = '::'.join(base + parts[:k])
        if cand in mods: best = cand; break
    return best
def expand(prefix, body):
    # expand `a::{b, c::{d}}` one level deep enough for module resolution
    items, depth, curi = [], 0, ''
    for ch in body:
        if ch == ',' and depth == 0: items.append(curi); curi = ''; continue
        depth += ch == '{'; depth -= ch == '}'; curi += ch
    items.append(curi)
    out = []
    for it in items:
        it = it.strip()
        if not it: continue
        if '{' in it:
            pre, rest = it.split('{', 1); out += expand(prefix + pre, rest.rsplit('}', 1)[0])
        else: out.append(prefix + it.split(' as ')[0].strip())
    return out
edges = {}
for m, p in mods.items():
    s = strip_tests(open(p).read()); deps = set()
    for u in re.finditer(r'\buse\s+((?:crate|super|self)[^;]*);', s):
        t = u.group(1).replace('\n', ' ')
        paths = expand(t.split('{', 1)[0], t.split('{', 1)[1].rsplit('}', 1)[0]) if '{' in t else [t]
        for q in paths:
            r = resolve(m, re.sub(r'\s', '', q))
            if r is not None and r != m: deps.add(r)
    for u in re.finditer(r'\b((?:crate|super)(?:::\w+)+)', s):
        r = resolve(m, u.group(1))
        if r is not None and r != m: deps.add(r)
    edges[m] = deps
def level(name, depth):
    return '::'.join(name.split('::')[:depth])
def cycles(graph):
    idx, low, st, on, res, n = {}, {}, [], set(), [], [0]
    def sc(v):
        idx[v] = low[v] = n[0]; n[0] += 1; st.append(v); on.add(v)
        for w in graph.get(v, ()):
            if w not in idx: sc(w); low[v] = min(low[v], low[w])
            elif w in on: low[v] = min(low[v], idx[w])
        if low[v] == idx[v]:
            comp = []
            while True:
                w = st.pop(); on.discard(w); comp.append(w)
                if w == v: break
            if len(comp) > 1: res.append(sorted(comp))
    for v in list(graph): 
        if v not in idx: sc(v)
    return res
found = False
# top level
top = {}
for a, ds in edges.items():
    for b in ds:
        ta, tb = level(a, 1), level(b, 1)
        if ta and tb and ta != tb: top.setdefault(ta, set()).add(tb)
for c in cycles(top): print('top-level cycle:', ' <-> '.join(c)); found = True
# siblings under each parent
parents = {level(m, len(m.split('::')) - 1) for m in mods if m}
for par in sorted(parents):
    g = {}
    d = len(par.split('::')) + 1 if par else 1
    for a, ds in edges.items():
        if not a.startswith(par): continue
        for b in ds:
            if not b.startswith(par): continue
            if par and not (a.startswith(par + '::') and b.startswith(par + '::')): continue
            la, lb = level(a, d), level(b, d)
            if la != lb and la and lb: g.setdefault(la, set()).add(lb)
    if par == '': continue
    for c in cycles(g): print(f'cycle under {par}:', ' <-> '.join(c)); found = True
if '-v' in sys.argv:
    for m in sorted(edges): print(m or '(lib)', '->', ', '.join(sorted(edges[m])))
print('no cycles' if not found else '')
