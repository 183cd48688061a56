#!/usr/bin/env bash
# Replace patches/ with the commits of another git repository whose base is
# pristine mlx-lm (a working clone of the series): the commits in
# BASE..UPSTREAM_END form the upstream track, UPSTREAM_END..HEAD the fork
# track. Then rebuild the tree from patches/.
#   tools/import_branch.sh /path/to/repo BASE UPSTREAM_END
set -euo pipefail
repo=$1 base=$2 end=$3
root=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fp=(git -C "$repo" -c core.abbrev=12 -c diff.renames=true format-patch --zero-commit
    --no-signature --no-numbered --no-thread --no-cover-letter --no-binary -q)
n_up=$(git -C "$repo" rev-list --count "$base..$end")
"${fp[@]}" -o "$tmp" "$base..HEAD"
rm -f "$root"/patches/*.patch
cp "$tmp"/*.patch "$root/patches/"
( cd "$root/patches" && ls *.patch | head -n "$n_up"; echo "# fork track"; ls *.patch | tail -n +"$((n_up + 1))" ) > "$tmp/series"
cp "$tmp/series" "$root/patches/series"
python3 "$root/tools/patchq.py" materialize --force
