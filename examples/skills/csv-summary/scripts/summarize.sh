#!/bin/sh
# Prints the rows and columns of a CSV file (header first), then the sum and mean of each
# column whose every value is a number.
set -eu
file=${1:?usage: summarize.sh FILE.csv}
awk -F, '
NR == 1 { for (i = 1; i <= NF; i++) { name[i] = $i; numeric[i] = 1 }; cols = NF; next }
{
  rows++
  for (i = 1; i <= cols; i++) {
    if ($i ~ /^-?[0-9]+(\.[0-9]+)?$/) { sum[i] += $i } else { numeric[i] = 0 }
  }
}
END {
  printf "rows: %d\ncolumns: %d\n", rows, cols
  for (i = 1; i <= cols; i++) {
    if (numeric[i] && rows > 0) {
      printf "%s: sum %g, mean %g\n", name[i], sum[i], sum[i] / rows
    } else {
      printf "%s: not numeric\n", name[i]
    }
  }
}' "$file"
