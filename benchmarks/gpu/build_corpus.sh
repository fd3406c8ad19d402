#!/usr/bin/env bash
# Issue 8's corpus (8 Debian-doc sources, 9.4M tokens), kept to reproduce issue 8's results; the gpu-*
# presets now read the >= 200M-token corpus of build_corpus.py (issue 14).
# Build the offline, multi-source "Pile-like" corpus and the public tokenizer used by benchmarks/gpu.
#
#   sudo apt-get install -y python3-doc perl-doc linux-doc dict-gcide     # Debian 12 doc packages
#   bash benchmarks/gpu/build_corpus.sh [OUT_DIR=.corpus] [MAX_BYTES_PER_SOURCE=3000000]
#
# Writes OUT_DIR/pile (8 sources, one subdirectory each, + manifest.json) and OUT_DIR/tokenizer
# (byte-level BPE, vocab 32768). The tokenizer is trained on PUBLIC text that no holder holds: the
# READMEs/changelogs of the other installed Debian packages plus the stdlib's single-file modules.
set -euo pipefail
OUT=${1:-.corpus}
MAXB=${2:-3000000}
STAGE=$(mktemp -d /tmp/sf-pile-XXXX)
TOK=$(mktemp -d /tmp/sf-tokpub-XXXX)
L=/usr/share/doc/linux-doc/Documentation
mkdir -p "$STAGE"/{python-docs,perl-pod,gcide-dict,linux-admin-guide,linux-driver-api,linux-networking,linux-filesystems,linux-core-process}
cp -r /usr/share/doc/python3.11/html/_sources/. "$STAGE/python-docs/"
for f in /usr/share/perl/5.*/pod/*.pod; do cp "$f" "$STAGE/perl-pod/$(basename "$f" .pod).txt"; done
# the dictionary is one dictzip file: split it into ~64 KB documents so held-out eval documents exist
zcat /usr/share/dictd/gcide.dict.dz | split -C 65536 -d -a 4 --additional-suffix=.txt - "$STAGE/gcide-dict/gcide-"
cp -r "$L/admin-guide/." "$STAGE/linux-admin-guide/"
cp -r "$L/driver-api/." "$STAGE/linux-driver-api/"
cp -r "$L/networking/." "$STAGE/linux-networking/"
cp -r "$L/filesystems/." "$STAGE/linux-filesystems/"
cp -r "$L/core-api/." "$L/process/." "$L/mm/." "$STAGE/linux-core-process/"
# public tokenizer text: every other package's docs (not linux-doc, python3.11 docs, perl)
for d in /usr/share/doc/*/; do
  case "$d" in */linux-doc/|*/python3.11/|*/python3.11-doc/|*/python3-doc/|*/perl*/) continue;; esac
  cp -r "$d" "$TOK/" 2>/dev/null || true
done
mkdir -p "$OUT"
securefed corpus build "$OUT/pile" --from "$STAGE" --max-sources 8 --max-bytes-per-source "$MAXB" --overwrite
rm -rf "$OUT/tokenizer"
securefed corpus tokenizer "$OUT/tokenizer" --from "$TOK" --from stdlib-modules --vocab-size 32768
rm -rf "$STAGE" "$TOK"
du -sh "$OUT"/*
