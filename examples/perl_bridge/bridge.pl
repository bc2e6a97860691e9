#!/usr/bin/env perl
# A snakepit worker in Perl: the stdio protocol of docs/protocol.md, core modules only.
#
# Frames are a 4-byte big-endian length (pack "N") and a JSON payload. A negotiation frame
# is answered with {"type": "protocol_selected", "protocol": "json"} and no "features", so
# the pool uses the Snakepit v0.3 subset: one request at a time, cancel = kill and restart.
# It exits 0 on stdin EOF. Commands: ping, echo, compute (add, subtract, multiply, divide),
# reverse, fail (always dies: the error path). run.py beside this file drives it.
use strict;
use warnings;
use JSON::PP ();
use POSIX qw(strftime);
use Time::HiRes qw(time);

my $JSON    = JSON::PP->new->utf8->canonical->allow_nonref;
my $STARTED = time;
my $HANDLED = 0;

binmode STDIN;
binmode STDOUT;

# Read exactly $n bytes; undef at EOF before the first byte, die on EOF inside a frame.
sub read_exactly {
    my ($n) = @_;
    my $buffer = '';
    while (length($buffer) < $n) {
        my $got = sysread(STDIN, $buffer, $n - length($buffer), length($buffer));
        die "read failed: $!\n" unless defined $got;
        if ($got == 0) {
            return undef if length($buffer) == 0;
            die "end of input inside a frame\n";
        }
    }
    return $buffer;
}

sub read_message {
    my $header = read_exactly(4);
    return undef unless defined $header;
    my $length = unpack('N', $header);
    my $body = $length ? read_exactly($length) : '';
    die "end of input inside a frame\n" unless defined $body;
    my $message = eval { $JSON->decode($body) };
    return defined $message ? $message : { invalid => ($@ || 'empty payload') };
}

sub write_message {
    my ($message) = @_;
    my $payload = $JSON->encode($message);
    my $frame   = pack('N', length $payload) . $payload;
    while (length $frame) {
        my $wrote = syswrite(STDOUT, $frame);
        die "write failed: $!\n" unless defined $wrote;
        substr($frame, 0, $wrote) = '';
    }
}

sub timestamp {
    my $now = time;
    return strftime('%Y-%m-%dT%H:%M:%S', gmtime $now) . sprintf('.%03dZ', ($now - int $now) * 1000);
}

sub number {
    my ($args, $key) = @_;
    my $value = $args->{$key} // 0;
    die "argument '$key' must be a number\n" if ref $value || $value !~ /^-?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?$/;
    return 0 + $value;
}

my %COMPUTE = (
    add      => sub { $_[0] + $_[1] },
    subtract => sub { $_[0] - $_[1] },
    multiply => sub { $_[0] * $_[1] },
    divide   => sub { die "division by zero\n" if $_[1] == 0; $_[0] / $_[1] },
);

my %COMMANDS = (
    ping => sub {
        my ($args) = @_;
        return {
            status           => 'ok',
            bridge_type      => 'perl',
            perl_version     => sprintf('%vd', $^V),
            pid              => $$,
            uptime           => time - $STARTED,
            requests_handled => $HANDLED,
        };
    },
    echo => sub {
        my ($args) = @_;
        return { status => 'ok', echoed => $args };
    },
    compute => sub {
        my ($args) = @_;
        my $operation = $args->{operation} // 'add';
        my $function  = $COMPUTE{$operation}
            or die "Unsupported operation: '$operation' (one of add, subtract, multiply, divide)\n";
        my ($x, $y) = (number($args, 'a'), number($args, 'b'));
        return { status => 'ok', operation => $operation, inputs => { a => $x, b => $y },
                 result => $function->($x, $y) };
    },
    reverse => sub {
        my ($args) = @_;
        my $text = $args->{text} // '';
        return { status => 'ok', text => scalar reverse $text };
    },
    fail => sub {
        my ($args) = @_;
        die(($args->{message} // 'fail was asked to fail') . "\n");
    },
);

sub handle_request {
    my ($request) = @_;
    my $id      = $request->{id};
    my $command = $request->{command} // '';
    my $args    = ref $request->{args} eq 'HASH' ? $request->{args} : {};
    my %reply   = (id => $id, timestamp => timestamp());
    my $function = $COMMANDS{$command};
    unless ($function) {
        return { %reply, success => JSON::PP::false, error => "Unknown command: $command",
                 error_type => 'UnsupportedCommand' };
    }
    $HANDLED++;
    my $result = eval { $function->($args) };
    if (my $error = $@) {
        chomp $error;
        return { %reply, success => JSON::PP::false, error => $error, error_type => 'PerlError' };
    }
    return { %reply, success => JSON::PP::true, result => $result };
}

while (defined(my $message = read_message())) {
    if (ref $message ne 'HASH' || exists $message->{invalid}) {
        # Not a request we can read: answer without an id (the pool matches it to the one
        # request in flight).
        write_message({ id => undef, success => JSON::PP::false, error => 'unreadable request',
                        error_type => 'ProtocolError', timestamp => timestamp() });
    }
    elsif (($message->{type} // '') eq 'protocol_negotiation') {
        write_message({ type => 'protocol_selected', protocol => 'json' });
    }
    else {
        write_message(handle_request($message));
    }
}
exit 0;
