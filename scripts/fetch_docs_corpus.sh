#!/usr/bin/env bash
# Builds data/docs/, a corpus of modern technical English (prose about code) from two Debian
# documentation packages, for training dictionaries on a real model beside Shakespeare:
#   - python3.11-doc: the Python 3.11 manual's reStructuredText sources (_sources/*.rst.txt),
#     497 files, 11 MB; PSF License Version 2 (see /usr/share/doc/python3.11-doc/copyright).
#   - perl-doc: the Perl 5.36 manual's POD files (perlfunc, perlre, perlfaq, ...), 206 files,
#     8.8 MB; GPL-1+ or Artistic License (see /usr/share/doc/perl-doc/copyright).
# One .txt file per page, named python-<path> or perl-<page>; about 5.6M SmolLM2 tokens together.
# Idempotent: an existing data/docs/ is kept. Needs root for apt-get (as scripts/setup.sh does).
set -euo pipefail
cd "$(dirname "$0")/.."
out=data/docs
if [ -f "$out/.complete" ]; then
  echo "fetch_docs_corpus: $out already built"
  exit 0
fi
if ! dpkg -s python3.11-doc perl-doc >/dev/null 2>&1; then
  apt-get install -y --no-install-recommends python3.11-doc perl-doc
fi
rm -rf "$out"
mkdir -p "$out"
src=/usr/share/doc/python3.11/html/_sources
find "$src" -name '*.rst.txt' | sort | while read -r f; do
  rel=${f#"$src"/}
  name=python-$(echo "${rel%.rst.txt}" | tr '/' '-')
  # pages that hold only directives and whitespace would be empty documents
  grep -q '[[:alpha:]]' "$f" && cp "$f" "$out/$name.txt"
done
dpkg -L perl-doc | grep '\.pod$' | sort | while read -r f; do
  grep -q '[[:alpha:]]' "$f" && cp "$f" "$out/perl-$(basename "${f%.pod}").txt"
done
touch "$out/.complete"
echo "fetch_docs_corpus: $(ls "$out" | wc -l) pages, $(cat "$out"/*.txt | wc -c) bytes in $out"
