#!/usr/bin/env bash
# Extract the page strings (Chinese source), merge them into the English catalog and
# compile it. Edit web/locale/en/LC_MESSAGES/cloudhall.po, then run this and commit
# both the .po and the .mo (the app reads the .mo; a checkout needs no build step).
#   scripts/compile_translations.sh            extract + update + compile
#   scripts/compile_translations.sh --compile  compile only
set -euo pipefail
cd "$(dirname "$0")/.."
PYBABEL="${PYBABEL:-.venv/bin/pybabel}"
[ -x "$PYBABEL" ] || PYBABEL=pybabel
locale_dir=web/locale
if [ "${1:-}" != "--compile" ]; then
  "$PYBABEL" -q extract -F web/babel.cfg -k N_ -k gettext_for:2 --no-location --sort-output \
    --project=cloudhall -o "$locale_dir/cloudhall.pot" .
  if [ -f "$locale_dir/en/LC_MESSAGES/cloudhall.po" ]; then
    "$PYBABEL" -q update -i "$locale_dir/cloudhall.pot" -d "$locale_dir" -D cloudhall -l en --no-fuzzy-matching
  else
    "$PYBABEL" -q init -i "$locale_dir/cloudhall.pot" -d "$locale_dir" -D cloudhall -l en
  fi
fi
"$PYBABEL" -q compile -d "$locale_dir" -D cloudhall --statistics
