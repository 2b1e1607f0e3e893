"""parse_store_url and etcd_tls_files: every form of store URL, and every bad one named."""

from twisted.trial.unittest import SynchronousTestCase

from powerstripflocker.control.store_url import (
    BadStoreURL, EtcdURL, SQLiteURL, etcd_tls_files, parse_store_url,
)


class ParseStoreURLTests(SynchronousTestCase):

    def test_sqlite_names_an_absolute_path(self):
        self.assertEqual(parse_store_url("sqlite:///var/lib/powerstrip-flocker/control.db"),
                         SQLiteURL("/var/lib/powerstrip-flocker/control.db"))
        self.assertEqual(str(parse_store_url(" sqlite:///srv/c.db ")), "sqlite:///srv/c.db")

    def test_etcd_members_and_prefix(self):
        url = parse_store_url("etcd://10.0.0.1:2379,10.0.0.2:2380/psf/prod")
        self.assertIsInstance(url, EtcdURL)
        self.assertEqual(url.endpoints.members, (("10.0.0.1", 2379), ("10.0.0.2", 2380)))
        self.assertEqual((url.endpoints.prefix, url.endpoints.tls), ("psf/prod", False))
        self.assertEqual(str(url), "etcd://10.0.0.1:2379,10.0.0.2:2380/psf/prod")

    def test_etcd_without_a_prefix_or_port(self):
        url = parse_store_url("etcd://e1")
        self.assertEqual((url.endpoints.members, url.endpoints.prefix), ((("e1", 2379),), ""))

    def test_etcds_is_tls(self):
        url = parse_store_url("etcds://[::1]:2379/psf")
        self.assertTrue(url.endpoints.tls)
        self.assertEqual(url.endpoints.members, (("::1", 2379),))

    def test_bad_urls_name_what_is_wrong(self):
        cases = {
            "": "empty store URL",
            "   ": "empty store URL",
            "/var/lib/control.db": "is not a store URL",
            "postgres://db/x": "unknown scheme 'postgres'",
            "sqlite://host/c.db": "names no host ('host')",
            "sqlite://c.db": "three slashes and an absolute PATH",
            "sqlite:///": "names no database file",
            "sqlite:///srv/": "names a directory",
            "sqlite:///c.db?mode=ro": "takes no query or fragment",
            "etcd://": "names no etcd member",
            "etcd://e1:0": "bad port '0'",
            "etcd://e1,e1": "names e1:2379 twice",
            "etcd://e1/../x": "bad prefix",
            "etcd://user@e1": "credentials in the URL",
            "etcd://e1,,e2": "empty member",
        }
        for text, message in cases.items():
            with self.assertRaises(BadStoreURL, msg=text) as raised:
                parse_store_url(text)
            self.assertIn(message, str(raised.exception), text)

    def test_not_a_string_is_refused(self):
        self.assertRaises(BadStoreURL, parse_store_url, None)


class TLSFilesTests(SynchronousTestCase):

    def test_etcds_takes_a_ca_and_a_client_certificate(self):
        files = etcd_tls_files(parse_store_url("etcds://e1/psf"), "ca.pem", "c.pem", "k.pem")
        self.assertEqual((files.ca, files.cert, files.key), ("ca.pem", "c.pem", "k.pem"))

    def test_etcds_without_files_trusts_the_system(self):
        files = etcd_tls_files(parse_store_url("etcds://e1/psf"))
        self.assertEqual((files.ca, files.cert, files.key), (None, None, None))

    def test_plain_stores_take_none(self):
        self.assertIsNone(etcd_tls_files(parse_store_url("etcd://e1")))
        self.assertIsNone(etcd_tls_files(parse_store_url("sqlite:///c.db")))

    def test_files_that_cannot_work_are_refused_naming_the_options(self):
        cases = [
            ("etcd://e1", ("ca.pem", None, None), {}, "--store-ca given, but etcd://e1:2379"),
            ("sqlite:///c.db", (None, "c", "k"), {"option": "--to"},
             "--to-cert, --to-key given, but sqlite:///c.db is not etcds://"),
            ("etcds://e1", ("ca.pem", "c.pem", None), {}, "--store-cert and --store-key go"),
            ("etcds://e1", (None, "c.pem", "k.pem"), {}, "--store-cert needs --store-ca"),
        ]
        for text, files, keywords, message in cases:
            with self.assertRaises(BadStoreURL) as raised:
                etcd_tls_files(parse_store_url(text), *files, **keywords)
            self.assertIn(message, str(raised.exception))
