#!/usr/bin/perl
# Rewrites a .cu file for the emulation build: every kernel launch
#   name<<<grid, block[, smem[, stream]]>>>(args)
# becomes
#   ::wan_emu::launch("name", ::wan_emu::cfg(grid, block[, smem[, stream]]), name, args)
# (tests/emu/cuda_emu.h). A #line directive keeps compiler messages on the original file.
use strict;
use warnings;
my $path = shift or die "usage: rewrite_launches.pl file.cu\n";
open(my $fh, '<', $path) or die "rewrite_launches.pl: cannot read $path: $!\n";
local $/;
my $src = <$fh>;
close $fh;
my $n = 0;
$n += $src =~ s/\b(\w+)\s*<<<(.*?)>>>\s*\(\s*\)/::wan_emu::launch("$1", ::wan_emu::cfg($2), $1)/gs;
$n += $src =~ s/\b(\w+)\s*<<<(.*?)>>>\s*\(/::wan_emu::launch("$1", ::wan_emu::cfg($2), $1, /gs;
die "rewrite_launches.pl: $path: a launch was not rewritten\n" if $src =~ /<<<|>>>/;
print "#line 1 \"$path\"\n", $src;
