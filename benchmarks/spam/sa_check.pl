#!/usr/bin/perl
# What `spamassassin -L -p PREFS` does for each message, in one process for many messages
# (file paths on standard input, one a line): prints "path<TAB>score<TAB>Yes|No" per message.
# Usage: perl sa_check.pl PREFS < paths
use strict;
use warnings;
use Mail::SpamAssassin;

my $prefs = shift @ARGV or die "usage: sa_check.pl PREFS < paths\n";
my $sa = Mail::SpamAssassin->new({
    userprefs_filename => $prefs,
    local_tests_only   => 1,
    dont_copy_prefs    => 1,
});
$sa->init(1);
$| = 1;
while (my $path = <STDIN>) {
    chomp $path;
    open(my $fh, '<', $path) or die "$path: $!\n";
    my @lines = <$fh>;
    close $fh;
    my $mail = $sa->parse(\@lines);
    my $status = $sa->check($mail);
    printf "%s\t%.2f\t%s\n", $path, $status->get_score(), $status->is_spam() ? 'Yes' : 'No';
    $status->finish();
    $mail->finish();
}
