"""The OCSF validator refuses what OCSF 1.1.0 refuses: the checks the collector's tests rely on
(collector/tests/security_lake.rs) are shown to fail on broken events."""

import copy
import unittest

from validate import Validator

GOOD = {
    "activity_id": 5,
    "activity_name": "Refuse",
    "category_uid": 4,
    "category_name": "Network Activity",
    "class_uid": 4001,
    "class_name": "Network Activity",
    "type_uid": 400105,
    "type_name": "Network Activity: Refuse",
    "severity_id": 1,
    "severity": "Informational",
    "time": 1764900000000,
    "action_id": 2,
    "action": "Denied",
    "disposition_id": 2,
    "disposition": "Blocked",
    "metadata": {
        "version": "1.1.0",
        "product": {"name": "tollgate", "vendor_name": "tollgate"},
        "profiles": ["cloud", "container", "security_control"],
    },
    "cloud": {"provider": "AWS", "region": "eu-west-1"},
    "src_endpoint": {"ip": "198.18.0.1", "container": {"name": "web-0"}},
    "dst_endpoint": {"ip": "198.18.0.2", "port": 5432},
    "connection_info": {"direction_id": 2, "direction": "Outbound"},
    "unmapped": {"cluster": "prod"},
}


class ValidatorTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.validator = Validator()

    def broken(self, change) -> list[str]:
        event = copy.deepcopy(GOOD)
        change(event)
        return self.validator.problems(event)

    def test_a_valid_event_passes(self):
        self.assertEqual(self.validator.problems(GOOD), [])

    def test_a_missing_required_field_fails(self):
        self.assertTrue(self.broken(lambda e: e.pop("dst_endpoint")))
        self.assertTrue(self.broken(lambda e: e["metadata"]["product"].pop("vendor_name")))

    def test_a_field_ocsf_does_not_define_fails(self):
        self.assertTrue(self.broken(lambda e: e["src_endpoint"].update(namespace="shop")))

    def test_a_profile_field_without_its_profile_fails(self):
        self.assertTrue(self.broken(lambda e: e["metadata"]["profiles"].remove("container")))

    def test_wrong_enums_types_and_captions_fail(self):
        self.assertTrue(self.broken(lambda e: e.update(activity_id=7, type_uid=400107)))
        self.assertTrue(self.broken(lambda e: e.update(type_uid=400106)))
        self.assertTrue(self.broken(lambda e: e.update(disposition="Dropped")))
        self.assertTrue(self.broken(lambda e: e["dst_endpoint"].update(port=70000)))
        self.assertTrue(self.broken(lambda e: e["src_endpoint"].update(ip="not-an-ip")))
        self.assertTrue(self.broken(lambda e: e.update(time="yesterday")))


if __name__ == "__main__":
    unittest.main()
