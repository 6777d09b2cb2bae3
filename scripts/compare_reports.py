#!/usr/bin/env python3
"""Compares two `interp report` folders: for each CSV or JSON file whose bytes differ, the keys or
columns added or removed, the largest relative difference of each numeric field, and other changed
values. Files equal byte for byte are not listed. Used to check that a refactor left the default
report's numbers unchanged (docs/validation.md).

    python3 scripts/compare_reports.py OLD_REPORT_DIR NEW_REPORT_DIR
"""
import csv
import json
import os
import sys

a, b = sys.argv[1], sys.argv[2]
def num(x):
    try: return float(x)
    except: return None
def walk(x,y,path,out):
    if isinstance(x,dict) and isinstance(y,dict):
        for k in set(x)|set(y):
            if k not in x: out['added'].add(path+'/'+k); continue
            if k not in y: out['removed'].add(path+'/'+k); continue
            walk(x[k],y[k],path+'/'+k,out)
    elif isinstance(x,list) and isinstance(y,list):
        if len(x)!=len(y): out['other'].append(f"{path}: len {len(x)} vs {len(y)}"); return
        for i,(p,q) in enumerate(zip(x,y)): walk(p,q,path+'[]',out)
    elif isinstance(x,(int,float)) and isinstance(y,(int,float)) and not isinstance(x,bool):
        if x!=y:
            d=abs(x-y)/max(abs(x),abs(y),1e-300)
            k=path
            out['num'][k]=max(out['num'].get(k,0),d)
    elif x!=y: out['other'].append(f"{path}: {str(x)[:60]} vs {str(y)[:60]}")
for root,_,files in os.walk(a):
    for f in sorted(files):
        pa=os.path.join(root,f); pb=os.path.join(b,os.path.relpath(pa,a))
        if not os.path.exists(pb) or open(pa,'rb').read()==open(pb,'rb').read(): continue
        out={'added':set(),'removed':set(),'num':{},'other':[]}
        if f.endswith('.json'):
            walk(json.load(open(pa)),json.load(open(pb)),'',out)
        elif f.endswith('.csv'):
            ra=list(csv.reader(open(pa))); rb=list(csv.reader(open(pb)))
            if len(ra)!=len(rb): out['other'].append(f"rows {len(ra)} vs {len(rb)}")
            hdr=ra[0]
            for r1,r2 in zip(ra[1:],rb[1:]):
                for h,c1,c2 in zip(hdr,r1,r2):
                    if c1!=c2:
                        n1,n2=num(c1),num(c2)
                        if n1 is not None and n2 is not None:
                            d=abs(n1-n2)/max(abs(n1),abs(n2),1e-300); out['num'][h]=max(out['num'].get(h,0),d)
                        else: out['other'].append(f"{h}: {c1[:50]} vs {c2[:50]}")
        else: continue
        print(os.path.relpath(pa,a))
        if out['added']: print('  added', sorted(out['added'])[:8])
        if out['removed']: print('  removed', sorted(out['removed'])[:8])
        for k,v in sorted(out['num'].items()): print(f'  {k}: max rel diff {v:.2e}')
        for o in out['other'][:6]: print('  ',o)
