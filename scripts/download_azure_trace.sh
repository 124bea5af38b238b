#!/usr/bin/env bash
# Download and unpack the Azure Functions Trace 2019 (Microsoft AzurePublicDataset, CC-BY 4.0):
# 14 days of per-function invocation counts per minute (invocations_per_function_md.anon.d01..d14.csv,
# about 130 MB a day), plus durations and memory. The paper's Fig. 14 replays day 2.
#
# Usage: scripts/download_azure_trace.sh [DEST]        (default DEST: data/azure2019)
#        AZURE_TRACE_URL=... to use a mirror.
# Prints, as its last line, the --trace-dir to pass to loadtest/azure_trace.py.
# Re-running is cheap: a complete download is not fetched again, a partial one is resumed.
set -euo pipefail

URL="${AZURE_TRACE_URL:-https://azurecloudpublicdataset2.blob.core.windows.net/azurepublicdatasetv2/azurefunctions_dataset2019/azurefunctions-dataset2019.tar.xz}"
DEST="${1:-data/azure2019}"
ARCHIVE_NAME="azurefunctions-dataset2019.tar.xz"

die() { echo "download_azure_trace: $*" >&2; exit 1; }

command -v tar >/dev/null || die "tar is required"
command -v xz >/dev/null || die "xz is required to unpack .tar.xz (apt-get install xz-utils)"

mkdir -p "$DEST"
DEST="$(cd "$DEST" && pwd)"
ARCHIVE="$DEST/$ARCHIVE_NAME"

find_day_file() {
    find "$DEST" -name 'invocations_per_function_md.anon.d*.csv' -print 2>/dev/null | sort | head -n 1
}

if [ -z "$(find_day_file)" ]; then
    if [ ! -f "$ARCHIVE.complete" ]; then
        echo "Downloading $URL -> $ARCHIVE" >&2
        if command -v curl >/dev/null; then
            # -C - resumes a partial file; --fail turns HTTP errors into a non-zero exit.
            curl --fail --location --retry 5 --retry-delay 5 -C - -o "$ARCHIVE" "$URL" \
                || die "download failed (curl exit $?); re-run to resume"
        elif command -v wget >/dev/null; then
            wget --tries=5 --continue -O "$ARCHIVE" "$URL" || die "download failed; re-run to resume"
        else
            die "curl or wget is required"
        fi
        # Checking the archive before marking it complete: a truncated file must not pass as done.
        xz -t "$ARCHIVE" || die "$ARCHIVE is corrupt or incomplete; delete it and re-run"
        touch "$ARCHIVE.complete"
    fi
    echo "Unpacking $ARCHIVE into $DEST" >&2
    tar -xJf "$ARCHIVE" -C "$DEST"
fi

DAY_FILE="$(find_day_file)"
[ -n "$DAY_FILE" ] || die "no invocations_per_function_md.anon.d*.csv found under $DEST after unpacking"
TRACE_DIR="$(dirname "$DAY_FILE")"
echo "Azure Functions 2019 trace ready: $(ls "$TRACE_DIR"/invocations_per_function_md.anon.d*.csv | wc -l) day files" >&2
echo "Delete $ARCHIVE to reclaim space if you like." >&2
echo "--trace-dir $TRACE_DIR"
