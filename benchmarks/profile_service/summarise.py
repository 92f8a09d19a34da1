"""Aggregate py-spy raw (collapsed) stacks: share of samples by the innermost qkcopy frame and by leaf frame."""
import collections
import sys

by_qk, by_leaf, total = collections.Counter(), collections.Counter(), 0
for line in open(sys.argv[1]):
    stack, _, count = line.rstrip().rpartition(" ")
    count = int(count)
    total += count
    frames = stack.split(";")
    qk = [f for f in frames if "qkcopy" in f]
    by_qk[qk[-1] if qk else "(outside qkcopy)"] += count
    by_leaf[frames[-1]] += count
print(f"{total} samples")
for title, counter in (("innermost qkcopy frame", by_qk), ("leaf frame", by_leaf)):
    print(f"-- by {title}")
    for name, c in counter.most_common(14):
        print(f"{100 * c / total:5.1f}%  {name[:150]}")
