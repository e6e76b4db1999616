import Gatehouse.Config

state "/var/lib/gatehouse/state.etf"
acme email: "ops@example.org",
  directory_url: :lets_encrypt_staging
http port: 80
https port: 443

service :blog do
  host "Blog.Example.ORG"
  target :blue, "http://127.0.0.1:4000", active: true, metadata: %{"a" => 1}
  balance :round_robin
  health "/up", timeout: 5_000, interval: 1_000
  drain :infinity
  tls :auto
end
