import csv
import sys


def summarize(path):
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    total = sum(float(r["amount"]) for r in rows)
    print(f"{len(rows)} rows, total {total:.2f}")


if __name__ == "__main__":
    summarize(sys.argv[1])
